from dropslot_kit.migrations import run_env

run_env(schema="catalog")
