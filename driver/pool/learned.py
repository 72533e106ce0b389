"""Images jobs took up after a pool machine became ready, pulled into it while it waits.

The pool service pulls the images recent jobs ran most (driver.image.learn) into
each machine it makes ready; an image that became one of them later is pulled
into the machines already waiting too, one thread per machine, each image under
``[image] pull_policy`` as the job would pull it (driver.pool.images). A claim
never waits for it: once a job claimed the machine, the images not yet begun are
abandoned, and one in flight simply finishes.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import structlog

from driver import log
from driver.image.learn import recent_images
from driver.pool import images
from driver.settings import Settings
from driver.state import PoolPhase, StateDir

Start = Callable[[Callable[[], None]], None]  # runs work in a thread of its own


class LearnedImages:
    """Which images each ready machine has been given; what it still lacks, pulled."""

    def __init__(self, settings: Settings, state: StateDir) -> None:
        self.settings = settings
        self.state = state
        self.log = log.get()
        self.lock = threading.Lock()
        self.given: dict[str, set[str]] = {}  # ready machine: the images pulled or tried
        self.pulling: set[str] = set()  # ready machines an image is being pulled into

    def made_ready(self, name: str, pulled: list[str]) -> None:
        """``name`` is ready with ``pulled`` (tried: a refused image is the job's)."""
        with self.lock:
            self.given[name] = set(pulled)

    def tick(self, start: Start) -> None:
        """Start a pull into each ready machine lacking a learned image."""
        learned = recent_images(self.settings.image, self.state)
        ready = self.state.ready()
        with self.lock:
            # A machine that left the ready set is forgotten: it is never ready again.
            self.given = {
                name: given
                for name, given in self.given.items()
                if name in ready or self.state.pool_phase(name) == PoolPhase.CREATING
            }
            work = []
            for name in ready if learned else []:
                missing = [i for i in learned if i not in self.given.get(name, set())]
                if missing and name not in self.pulling:
                    self.pulling.add(name)
                    work.append(functools.partial(self.pull_into, name, missing))
        for pull in work:
            start(pull)

    def pull_into(self, name: str, wanted: list[str]) -> None:
        structlog.contextvars.bind_contextvars(machine=name)
        try:
            record = self.state.load_pool(name)
            if record is None:
                return
            pulled = images.pull_while_ready(
                self.state,
                name,
                record.address,
                wanted,
                self.settings,
                say=lambda message: self.log.info("pool_progress", message=message),
                skipped=lambda image, why: self.log.info(
                    "pool_image_skipped", image=image, why=why[:300]
                ),
            )
            self.log.info("pool_images_learned", images=pulled, ready=True)
        except Exception as e:  # claimed and gone, its engine lost: the job pulls then
            self.log.info("pool_images_not_pulled", error=str(e)[:300])
        finally:
            with self.lock:
                self.pulling.discard(name)
                # Tried, pulled or not: not again (a refused one is the job's to pull).
                self.given.setdefault(name, set()).update(wanted)
