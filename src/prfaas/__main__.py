"""`python -m prfaas`: the same entry point as the `prfaas` console script."""

from prfaas.cli import main

raise SystemExit(main())
