"""`procqueue` sub-commands: one module per command group, each with
`register(subcommands)` adding its parsers with a `handler` default."""
