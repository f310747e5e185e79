"""``python -m fetcher`` is the same as the ``fetcher`` command."""

from fetcher.cli import main

if __name__ == "__main__":
    main()
