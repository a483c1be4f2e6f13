from null_steps.common import make

main = make("eval")

if __name__ == "__main__":
    main()
