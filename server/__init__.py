"""The cashout service: app factory, settings, storage, crypto, engine, start-up."""
