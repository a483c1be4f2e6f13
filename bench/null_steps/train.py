from null_steps.common import make

main = make("train")

if __name__ == "__main__":
    main()
