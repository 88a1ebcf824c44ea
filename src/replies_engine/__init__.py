"""replies-engine: answers people who reply on WhatsApp, SMS and email."""

__version__ = "0.1.0"
