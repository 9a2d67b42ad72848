"""The Files API: uploads kept in the tenancy store, and their text put into chat prompts."""
