from null_steps.common import make

main = make("pairs")

if __name__ == "__main__":
    main()
