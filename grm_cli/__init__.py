"""The ``grm`` command line: one module per subcommand, each owning its flags and its handler.

Every subcommand module has ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; ``grm_cli.main`` builds the parser from them and dispatches. This is
the top layer: it may import every package below it (``grm``, ``services``, ``policy``,
``spct``), and nothing imports it. Library code never parses argv: a handler turns its
flags into the typed options of the library it calls.

    grm serve | score | info | demo | eval | spct | grpo | grpo-demo
    python -m grm_cli ...            # the same, without the console script
"""
