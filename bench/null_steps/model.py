from null_steps.common import make

main = make("model")

if __name__ == "__main__":
    main()
