"""Partner webhooks: endpoints, the outbox written beside each state change, and delivery."""
