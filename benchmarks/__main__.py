"""Run every benchmark and print its figures."""

import platform
import time

from benchmarks import chunking, claims


def main() -> None:
    cpu = platform.processor() or platform.machine()
    print(f"{time.strftime('%Y-%m-%d')}: {cpu}, Python {platform.python_version()}")
    claims.main()
    chunking.main()


if __name__ == "__main__":
    main()
