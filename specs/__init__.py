"""The example specs that ship with decspec, addressable by name: `decspec run speculative`,
`decspec.compile("speculative")` (dsl/check.py `spec_path`)."""
