"""Tornado request handlers: parse, authorize, call the engine, render."""
