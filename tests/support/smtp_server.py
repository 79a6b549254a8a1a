"""The loopback SMTP server the tests send email to: the stand-in itself lives in
procqueue/loopback/smtp.py, which the demo runs too."""

from procqueue.loopback.smtp import Received, SmtpRecorder, smtp_server

__all__ = ["Received", "SmtpRecorder", "smtp_server"]
