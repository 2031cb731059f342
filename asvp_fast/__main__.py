"""``python -m asvp_fast ...``: the ``asvp-fast`` command (also what ``torchrun -m asvp_fast`` runs)."""

from .cli import main

raise SystemExit(main())
