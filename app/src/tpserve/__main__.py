"""`python -m tpserve` == the `tpserve` console script."""

from tpserve.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
