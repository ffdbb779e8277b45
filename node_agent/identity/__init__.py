"""Task users: who a task runs as (userIdentity), the accounts the agent creates for it, and their removal."""
