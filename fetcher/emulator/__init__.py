"""A faithful local emulator of the RDS API and of the object storage behind backup URLs.

Used by the tests, by ``fetcher demo`` and by users for drills and their own CI.
"""

from fetcher.emulator.server import Emulator, EmulatorThread

__all__ = ["Emulator", "EmulatorThread"]
