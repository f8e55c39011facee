"""``python -m clusterodm``."""

from clusterodm.cli import main

if __name__ == "__main__":
    main()
