"""`python -m shmbus`: the same command as the `shmbus` script."""

from shmbus.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
