"""`python -m e4e_cli ...` (what torchrun runs): the e4e command line."""
from .cli.app import main

raise SystemExit(main())
