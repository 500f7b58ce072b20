"""Top-ups: orders paid through payment channels or from a partner's float, their state
machine, refunds, and the physical cards riders link to top them up."""
