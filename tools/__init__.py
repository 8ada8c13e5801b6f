"""Tools for development and tests, not part of any role: the Cloudflare Calls
stand-in (`tools.fakecalls`). No role imports them; the launcher (`signaling dev
--fake-calls`) and the tests do."""
