"""Request Processor (Rossum export v2) run time: placeholders, filters, HTTP, handlers."""
