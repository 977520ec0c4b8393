"""``python -m grm_cli`` is the ``grm`` command."""

from grm_cli.main import main

raise SystemExit(main())
