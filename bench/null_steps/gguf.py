from null_steps.common import make

main = make("gguf")

if __name__ == "__main__":
    main()
