"""A few of tempest's exception types, for realistic failure tracebacks."""


class TempestException(Exception):
    message = "An unknown exception occurred"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(self.message % kwargs)


class BuildErrorException(TempestException):
    message = "Server %(server_id)s failed to build and is in ERROR status\nDetails: %(details)s"
