"""SQL, SMTP, signed-HTTP providers and the dev SMTP catcher."""
