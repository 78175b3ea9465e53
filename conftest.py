pytest_plugins = ["dropslot_kit.testing"]
