"""Optional, opt-in extensions the core library never imports."""
