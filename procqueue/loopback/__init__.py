"""Loopback stand-ins for the sinks a worker delivers to, speaking the real APIs to the
real clients: an SMTP server (smtp.py, aiosmtpd), FCM's token and send endpoints
(fcm.py) and Cloudinary's Admin API delete (cloudinary.py). The tests drive them (with
scripted failures); the demo runs all three at once (sinks.py) so that email, push and
image cleanup happen on a bare machine, and nothing reaches a real inbox, phone or
Cloudinary account. They need the `local` extra (aiosmtpd); nothing else imports them.
"""
