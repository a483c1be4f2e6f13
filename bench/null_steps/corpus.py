from null_steps.common import make

main = make("corpus")

if __name__ == "__main__":
    main()
