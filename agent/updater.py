"""One poll cycle of the update agent, and the loop around it.

A cycle, in order:
1. **Settle** an update under way (`pending.py`): once the restore has run and the OS is up,
   report `closed`/`success` when the unit runs the new image, or `closed`/`failure` with the
   reason when it fell back (the ramdisk gave the image up: it did not confirm its first
   boot). The record stays until the server has the result, so a network outage delays the
   report and never loses it.
2. **Poll** the root; answer `configData` with the unit's attributes (serial, variant,
   installed image, hardware revision) and declare the installed image (`installedBase`)
   when the server does not know it yet. Send the events the ramdisk's runs (a restore, an
   erase) spooled on RECOVERY while they had no network, with the device token.
3. **Cancel** (`cancelAction`): withdraw a restore this agent requested and has not rebooted
   for yet, and acknowledge. **Consent** (`confirmationBase`, where the server asks for it):
   an appliance has nobody to ask, so the agent confirms.
4. **Deploy** (`deploymentBase`): honour `download: skip`; otherwise report `download`, copy the
   `.upd` artifact into RECOVERY with the verified, resumable reader (`ImageStore.add`),
   report `downloaded`; with `update: skip` (a download-only action, or a closed maintenance
   window) stop there; else record the update, report `proceeding`, request a restore of that
   image on trial that keeps DATA, and reboot. `attempt` counts as consent: an appliance has
   nobody to ask.
A failure that is the image's (a bad signature, the wrong variant) ends the action with
`closed`/`failure`; one that is the network's ends the cycle, to be tried again.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from agent import pending
from agent.config import AgentConfig
from agent.ddi import DdiAnswerError, DdiClient, Deployment
from agent.pending import PendingUpdate
from kiln.errors import KilnError
from kiln.events import Sender, spools
from kiln.image.errors import ImageError, SourceError
from kiln.image.http import HttpSource
from kiln.image.signing import TrustStore
from kiln.process import run
from kiln.serverclient import ServerError
from recovery import boots
from recovery.layout import RecoveryLayout, Request
from recovery.requests import cancel, request_restore
from recovery.store import ImageStore, StoredImage

log = logging.getLogger(__name__)
IMAGE_SUFFIX = ".upd"
OFFLINE_SECONDS = 60  # how soon to try again after the server could not be reached
GONE = (404, 410)  # the action ended or is not this unit's any more
HARDWARE_REVISION = Path("/sys/class/dmi/id/product_version")


class Outcome(enum.StrEnum):
    IDLE = "idle"  # nothing to do
    CONFIRMED = "confirmed"  # the device consented to an action (it comes next poll)
    REPORTED = "reported"  # a result went to the server
    DOWNLOADED = "downloaded"  # the image is on RECOVERY; installing waits (update: skip)
    RESTORING = "restoring"  # a restore is requested; the unit reboots
    CANCELED = "canceled"
    FAILED = "failed"  # the action ended in failure
    OFFLINE = "offline"  # the server could not be reached: try again later


@dataclass(frozen=True, kw_only=True)
class CycleResult:
    outcome: Outcome
    sleep_seconds: int
    message: str


class Updater:
    def __init__(self, config: AgentConfig, *, client: DdiClient,
                 reboot: Callable[[], None] | None = None, send_events: Sender | None = None):
        self.config = config
        self.client = client
        self.send_events = send_events
        self.layout = RecoveryLayout(config.recovery)
        self.store = ImageStore(config.recovery, TrustStore.from_paths([self.layout.keys]))
        self.reboot = reboot or (lambda: run(list(config.reboot_argv), timeout=60))
        self._sleep = config.poll_seconds or OFFLINE_SECONDS
        self._declared = False
        self._reported_download: set[int] = set()

    # -- the installed image ------------------------------------------------------------------

    def _stored(self, image_id: str) -> StoredImage | None:
        return next((image for image in self.store.scan()[0] if image.image_id == image_id),
                    None)

    def attributes(self) -> dict[str, str]:
        found = {"serial": self.config.serial, "variant": self.config.variant}
        installed = boots.installed(self.layout)
        if installed is not None:
            found["installed"] = installed.label
        with contextlib.suppress(OSError):
            found["hardware_revision"] = HARDWARE_REVISION.read_text().strip()
        return {key: value for key, value in found.items() if value}

    def _declare_installed(self) -> None:
        installed = boots.installed(self.layout)
        image = self._stored(installed.image_id) if installed else None
        self._declared = True
        if image is None:
            return
        try:
            self.client.installed_base(name=image.manifest.product,
                                       version=image.manifest.release)
        except ServerError as e:
            if e.status != 404:
                raise
            log.info("agent: the server has no module for %s: %s", image.label, e)

    def _send_spooled(self) -> None:
        """RECOVERY's spooled events to the server; what fails stays for the next cycle."""
        if self.send_events is None:
            return
        sent = 0
        try:
            for spool in spools(self.layout.logs):
                sent += spool.flush(self.send_events)
        except (ServerError, OSError) as e:
            log.warning("agent: spooled events stay on RECOVERY for now: %s", e)
        if sent:
            log.info("agent: sent %d spooled event(s) from RECOVERY", sent)

    # -- a cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self.config.confirm_boot and boots.confirm(self.layout):
            log.info("agent: the OS is up: boot confirmed")

    def cycle(self) -> CycleResult:
        try:
            update = pending.load(self.layout)
            if update is not None:
                settled = self._settle(update)
                if settled is not None:
                    return settled
            poll = self.client.poll()
            self._sleep = self.config.poll_seconds or poll.sleep_seconds
            if "configData" in poll.links:
                self.client.config_data(self.attributes())
            if "installedBase" not in poll.links and not self._declared:
                self._declare_installed()
            self._send_spooled()
            if "cancelAction" in poll.links:
                return self._cancel(poll.links["cancelAction"])
            if "confirmationBase" in poll.links:  # nobody to ask on an appliance: consent
                action_id = self.client.confirm(poll.links["confirmationBase"], details=[
                    "the appliance consents: there is no user to ask"])
                return self._result(Outcome.CONFIRMED, f"action {action_id} confirmed")
            if "deploymentBase" in poll.links:
                return self._deploy(self.client.deployment(poll.links["deploymentBase"]))
            return self._result(Outcome.IDLE, "nothing to do")
        except (ServerError, SourceError, DdiAnswerError) as e:
            log.warning("agent: %s; trying again in %d s", e, OFFLINE_SECONDS)
            return CycleResult(outcome=Outcome.OFFLINE, sleep_seconds=OFFLINE_SECONDS,
                               message=str(e))

    def _result(self, outcome: Outcome, message: str) -> CycleResult:
        log.info("agent: %s: %s", outcome.value, message)
        return CycleResult(outcome=outcome, sleep_seconds=self._sleep, message=message)

    def _settle(self, update: PendingUpdate) -> CycleResult | None:
        if self.layout.requested(Request.RESTORE):  # its restore has not run yet
            return self._rebooting(f"{update.label}: rebooting to restore")
        installed = boots.installed(self.layout)
        if installed is not None and installed.image_id == update.image_id:
            if boots.unconfirmed(self.layout) is not None:
                return None  # the OS has not confirmed this boot yet: not a success yet
            if installed.trial:
                boots.record_installed(self.layout, image_id=installed.image_id,
                                       label=installed.label)  # the trial is over
            finished, details = "success", [f"{update.label} is installed and running; "
                                            "DATA kept"]
        else:
            reason = self.store.history.record(update.image_id).last_reason
            now = installed.label if installed else "no recorded image"
            finished, details = "failure", [
                f"{update.label} did not come up: {reason or 'the restore did not install it'}",
                f"the unit runs {now} again"]
        try:
            self.client.feedback(update.action_id, execution="closed", finished=finished,
                                 details=details)
        except ServerError as e:
            if e.status not in GONE:
                raise
            log.warning("agent: action %d ended on the server before its result: %s",
                        update.action_id, e)
        pending.clear(self.layout)
        return self._result(Outcome.REPORTED if finished == "success" else Outcome.FAILED,
                            "; ".join(details))

    def _cancel(self, href: str) -> CycleResult:
        stop_id = self.client.cancel_stop_id(href)
        update = pending.load(self.layout)
        withdrawn = ""
        if update is not None and update.action_id == stop_id and cancel(self.layout,
                                                                          Request.RESTORE):
            pending.clear(self.layout)
            withdrawn = f"; the restore of {update.label} is withdrawn"
        self.client.feedback(stop_id, execution="closed", finished="success", cancel=True,
                             details=[f"canceled: nothing installed{withdrawn}"])
        return self._result(Outcome.CANCELED, f"action {stop_id} canceled{withdrawn}")

    def _fail(self, action_id: int, message: str) -> CycleResult:
        self.client.feedback(action_id, execution="closed", finished="failure",
                             details=[message])
        return self._result(Outcome.FAILED, message)

    def _fetch(self, deployment: Deployment) -> StoredImage | CycleResult:
        images = [a for a in deployment.artifacts if a.filename.endswith(IMAGE_SUFFIX)]
        if len(images) != 1:
            return self._fail(deployment.action_id, f"the deployment has {len(images)} .upd "
                              "artifacts; a Kiln unit installs exactly one")
        artifact = images[0]
        first_time = deployment.action_id not in self._reported_download
        if first_time:
            self.client.feedback(deployment.action_id, execution="download", details=[
                f"downloading {artifact.filename} ({artifact.size} bytes) into RECOVERY"])
        session = requests.Session()
        session.headers.update(self.client.session.headers)
        try:
            stored = self.store.add(HttpSource(artifact.href, session=session,
                                               verify=self.config.verify))
        except SourceError:
            raise  # the network's: resumed next cycle at the last good frame
        except (ImageError, KilnError) as e:
            return self._fail(deployment.action_id, f"{artifact.filename} was not stored: {e}")
        finally:
            session.close()
        if self.config.variant and not stored.manifest.supports_variant(self.config.variant):
            return self._fail(deployment.action_id, f"{stored.label} is not for variant "
                              f"{self.config.variant!r}")
        if first_time:
            self.client.feedback(deployment.action_id, execution="downloaded",
                                 details=[f"{stored.label} verified on RECOVERY"])
            self._reported_download.add(deployment.action_id)
        return stored

    def _deploy(self, deployment: Deployment) -> CycleResult:
        if deployment.download == "skip":
            return self._result(Outcome.IDLE, f"action {deployment.action_id}: download skip")
        stored = self._fetch(deployment)
        if isinstance(stored, CycleResult):
            return stored
        installed = boots.installed(self.layout)
        if installed is not None and installed.image_id == stored.image_id:
            self.client.feedback(deployment.action_id, execution="closed", finished="success",
                                 details=[f"{stored.label} is installed already"])
            return self._result(Outcome.REPORTED, f"{stored.label} is installed already")
        if deployment.update == "skip":
            why = ("the maintenance window is closed" if deployment.window == "unavailable"
                   else "the action only downloads")
            return self._result(Outcome.DOWNLOADED, f"{stored.label} waits: {why}")
        pending.save(self.layout, PendingUpdate(
            action_id=deployment.action_id, image_id=stored.image_id, label=stored.label,
            previous_image_id=installed.image_id if installed else None,
            previous_label=installed.label if installed else "", requested_ns=time.time_ns()))
        self.client.feedback(deployment.action_id, execution="proceeding", details=[
            f"restoring {stored.label} on trial, keeping DATA; rebooting"])
        request_restore(self.layout, keep_data=True, image_id=stored.image_id, trial=True,
                        reason=f"update: action {deployment.action_id}")
        return self._rebooting(f"{stored.label}: rebooting to restore")

    def _rebooting(self, message: str) -> CycleResult:
        result = self._result(Outcome.RESTORING, message)  # said before the reboot cuts it
        self.reboot()
        return result

    def run(self, *, cycles: int | None = None,
            sleep: Callable[[float], None] = time.sleep) -> CycleResult:
        """Cycle until `cycles` have run (None: for ever) or a restore reboots the unit."""
        self.start()
        done = 0
        while True:
            result = self.cycle()
            done += 1
            if result.outcome is Outcome.RESTORING or (cycles is not None and done >= cycles):
                return result
            sleep(result.sleep_seconds)
