"""`python -m maskgen` runs the command-line interface."""
from maskgen.main import run

if __name__ == "__main__":
    run()
