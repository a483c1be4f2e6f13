from null_steps.common import make

main = make("tokenizer")

if __name__ == "__main__":
    main()
