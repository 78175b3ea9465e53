"""SQL, the encrypted secret store and the HTTP client of the webhooks service."""
