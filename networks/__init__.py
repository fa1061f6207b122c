"""Plain nn.Modules: no Lightning here."""
