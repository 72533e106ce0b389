"""config-example: print the example config shipped with the package, every setting commented."""

from __future__ import annotations

import argparse
import sys

from driver.settings import example_config_path


def main(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config_path().read_text())
    return 0
