"""`python -m jvmail`."""

from jvmail.cli import main

main()
