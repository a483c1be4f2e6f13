from null_steps.common import make

main = make("tokenize")

if __name__ == "__main__":
    main()
