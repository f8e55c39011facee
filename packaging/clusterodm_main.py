"""Entry point of the single-file executable: the same ``clusterodm`` command as the pip install."""

from clusterodm.cli import main

if __name__ == "__main__":
    main()
