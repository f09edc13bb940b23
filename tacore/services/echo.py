"""The ``echo`` service: returns ``params`` unchanged, whatever the method."""


class Echo:
    def handle(self, method: str, params):
        return params
