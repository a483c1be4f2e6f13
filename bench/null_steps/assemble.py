from null_steps.common import make

main = make("assemble")

if __name__ == "__main__":
    main()
