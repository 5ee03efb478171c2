"""The server's tables (SQLAlchemy Core). Migrations in `migrations/` create them.

Times are integers: nanoseconds since the epoch (`*_ns`), the unit the event contract uses,
so SQLite and PostgreSQL compare and index them alike. JSON documents are stored as text.
Every table that a tenant's devices or rollouts reach carries `tenant` (DDI is per tenant).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

MAX_BIGINT = 2**63 - 1  # the largest value a BigInteger column holds (and SQLite's INTEGER)

metadata = MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),  # scrypt, salted
    Column("scopes", String(255), nullable=False),  # space-separated Scope values
    Column("created_ns", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", String(32), primary_key=True),  # the public half: kiln_<id>_<secret>
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("secret_hash", String(64), nullable=False),  # sha256 of the secret half
    Column("scopes", String(255), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("expires_ns", BigInteger),
    Column("revoked_ns", BigInteger),
)

sessions = Table(
    "sessions", metadata,
    Column("id_hash", String(64), primary_key=True),  # sha256 of the cookie value
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("expires_ns", BigInteger, nullable=False),
)

profiles = Table(
    "profiles", metadata,
    Column("name", String(64), primary_key=True),
    Column("tenant", String(64), nullable=False, default="default"),
    Column("document", Text, nullable=False),  # manufData JSON as the operator wrote it
    Column("key_hash", String(64), nullable=False),  # the line key units authenticate with
    Column("kernel_file", String(128)),  # boot files (names in `files`) for the iPXE script
    Column("initrd_file", String(128)),
    Column("kernel_args", String(512), nullable=False, default=""),
    Column("revision", Integer, nullable=False, default=1),
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
)

files = Table(  # boot files and other blobs a profile names, by name
    "files", metadata,
    Column("name", String(128), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
)

images = Table(
    "images", metadata,
    Column("id", String(64), primary_key=True),  # sha256 of the signed manifest (image id)
    Column("tenant", String(64), nullable=False, default="default"),
    Column("sha256", String(64), nullable=False),  # of the whole file: where it is stored
    Column("size", BigInteger, nullable=False),
    Column("product", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("build", Integer, nullable=False),
    Column("variants", Text, nullable=False),  # JSON list
    Column("payload", String(32), nullable=False),
    Column("key_ids", Text, nullable=False),  # JSON list of the keys that signed it
    Column("created_ns", BigInteger, nullable=False),
    Column("uploaded_by", String(64), nullable=False),
)

units = Table(
    "units", metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(64), nullable=False, default="default"),
    Column("serial", String(128), nullable=False),
    Column("profile", String(64)),
    Column("variant", String(64)),
    Column("dmi", Text, nullable=False, default="{}"),
    Column("macs", String(1024), nullable=False, default=""),  # space-separated, lower case
    Column("hardware", Text, nullable=False, default="{}"),  # disks, cpu, memory as reported
    Column("lifecycle", String(16)),  # manufacture | restore | erase (the latest run's)
    Column("status", String(16)),  # started | succeeded | failed
    Column("failure", Text),  # "stage: message" of the latest failed run
    Column("device_token_hash", String(64)),
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    Column("manufactured_ns", BigInteger),
    UniqueConstraint("tenant", "serial", name="uq_units_tenant_serial"),
    # Unit search: pages newest first (tenant, then the keyset order); the text columns make
    # it covering for `q=` (part of a serial or MAC), which SQLite then scans without
    # reading every row.
    Index("ix_units_updated", "tenant", "updated_ns", "id", "serial", "macs", "profile",
          "variant"),
    Index("ix_units_status", "lifecycle", "status", "updated_ns"),
    Index("ix_units_variant", "variant", "updated_ns"),
    Index("ix_units_device_token", "device_token_hash"),
)

runs = Table(
    "runs", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("unit_id", Integer, ForeignKey("units.id"), nullable=False),
    Column("kind", String(16)),  # set by the run's top-level start event
    Column("status", String(16)),
    Column("failure", Text),
    Column("started_ns", BigInteger),
    Column("finished_ns", BigInteger),
    Index("ix_runs_unit", "unit_id", "started_ns"),
    Index("ix_runs_finished", "finished_ns"),
)

events = Table(
    "events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("unit_id", Integer, ForeignKey("units.id"), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("timestamp_ns", BigInteger, nullable=False),
    Column("type", String(16), nullable=False),
    Column("name", String(255), nullable=False),
    Column("message", Text, nullable=False),
    Column("result", String(16)),
    Column("level", String(16)),
    Column("done", BigInteger),
    Column("total", BigInteger),
    Column("received_ns", BigInteger, nullable=False),
    UniqueConstraint("run_id", "seq", name="uq_events_run_seq"),
    Index("ix_events_unit", "unit_id", "id"),
)

credentials = Table(
    "credentials", metadata,
    Column("unit_id", Integer, ForeignKey("units.id"), primary_key=True),
    Column("sealed", LargeBinary, nullable=False),  # AES-256-GCM under the server key
    Column("key_id", String(16), nullable=False),  # which server key sealed it
    Column("created_ns", BigInteger, nullable=False),
    Column("handed_out_ns", BigInteger),
)

qa_reports = Table(
    "qa_reports", metadata,
    Column("id", Integer, primary_key=True),
    Column("unit_id", Integer, ForeignKey("units.id"), nullable=False),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("created_ns", BigInteger, nullable=False),
    Column("document", Text, nullable=False),
    Index("ix_qa_reports_unit", "unit_id"),
)

erase_certificates = Table(
    "erase_certificates", metadata,
    Column("id", Integer, primary_key=True),
    Column("unit_id", Integer, ForeignKey("units.id"), nullable=False),
    Column("run_id", String(64), nullable=False, unique=True),
    Column("created_ns", BigInteger, nullable=False),
    Column("document", Text, nullable=False),
    Index("ix_erase_certificates_unit", "unit_id"),
)

audit = Table(
    "audit", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at_ns", BigInteger, nullable=False),
    Column("actor", String(128), nullable=False),  # "user:alice", "token:ab12…", "unit:SN1"
    Column("action", String(64), nullable=False),  # "credential.reveal", "image.push", …
    Column("target", String(255), nullable=False),
    Column("remote", String(64), nullable=False, default=""),
    Column("details", Text, nullable=False, default="{}"),
    Index("ix_audit_target", "target", "at_ns"),
)

# --- Field updates: hawkBit DDI (server/ddi/) -----------------------------------------------

ddi_tenants = Table(  # a tenant's DDI settings; a tenant without a row has the defaults
    "ddi_tenants", metadata,
    Column("tenant", String(64), primary_key=True),
    Column("gateway_token_hash", String(64)),  # GatewayToken: acts for any controller
    Column("polling_seconds", Integer, nullable=False),
    Column("trusted_issuers", Text, nullable=False, default="[]"),  # client-cert authorities
    Column("confirmation_required", Boolean, nullable=False, default=False),  # user consent
    Column("updated_ns", BigInteger, nullable=False),
)

targets = Table(  # a device as DDI knows it: the controller id is a Kiln unit's serial
    "targets", metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("controller_id", String(128), nullable=False),
    Column("name", String(128), nullable=False),
    Column("token_hash", String(64)),  # TargetToken (a Kiln unit uses its device token)
    Column("unit_id", Integer, ForeignKey("units.id")),
    Column("attributes", Text, nullable=False, default="{}"),  # configData, JSON object
    Column("attributes_requested", Boolean, nullable=False, default=True),
    Column("update_mode", String(16), nullable=False),  # UpdateMode
    Column("pinned_module_id", Integer, ForeignKey("software_modules.id")),
    Column("tags", Text, nullable=False, default="[]"),  # JSON list
    Column("installed_module_id", Integer, ForeignKey("software_modules.id")),
    Column("installed_action_id", Integer),
    Column("auto_confirm", Boolean, nullable=False, default=False),  # consents in advance
    Column("auto_confirm_by", String(128)),  # the initiator the device named
    Column("auto_confirm_remark", Text),
    Column("address", String(64)),
    Column("last_seen_ns", BigInteger),  # batched: written every few seconds, not per poll
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    UniqueConstraint("tenant", "controller_id", name="uq_targets_tenant_controller"),
    Index("ix_targets_token", "token_hash"),
)

software_modules = Table(  # what an action installs; every uploaded image is one
    "software_modules", metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("kind", String(32), nullable=False),  # the DDI chunk's `part`: "os", …
    Column("name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("image_id", String(64), ForeignKey("images.id"), unique=True),  # a `.upd` image
    Column("variants", Text, nullable=False, default="[]"),  # compatible hardware (JSON)
    Column("created_ns", BigInteger, nullable=False),
    Column("created_by", String(64), nullable=False),
    Index("ix_software_modules_tenant", "tenant", "name", "version"),
)

artifacts = Table(  # the files of a module (blobs in the store, by sha256)
    "artifacts", metadata,
    Column("id", Integer, primary_key=True),
    Column("module_id", Integer, ForeignKey("software_modules.id"), nullable=False),
    Column("filename", String(128), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    UniqueConstraint("module_id", "filename", name="uq_artifacts_module_filename"),
)

actions = Table(  # one per assignment of a module to a target, with its own history
    "actions", metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("target_id", Integer, ForeignKey("targets.id"), nullable=False),
    Column("module_id", Integer, ForeignKey("software_modules.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # ActionKind: forced | soft | download_only
    Column("state", String(24), nullable=False),  # ActionState
    Column("active", Boolean, nullable=False),
    Column("maintenance", Text),  # MaintenanceWindow JSON, or none
    Column("rollout_id", Integer),
    Column("wave", Integer),
    Column("last_message", Text, nullable=False, default=""),
    Column("created_by", String(128), nullable=False),
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    Index("ix_actions_target", "target_id", "active", "id"),
    Index("ix_actions_rollout", "rollout_id", "wave", "state"),
)

action_status = Table(  # an action's history: every feedback and every operator step
    "action_status", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("action_id", Integer, ForeignKey("actions.id"), nullable=False),
    Column("at_ns", BigInteger, nullable=False),
    Column("state", String(24), nullable=False),
    Column("code", Integer),
    Column("messages", Text, nullable=False, default="[]"),  # JSON list
    Index("ix_action_status_action", "action_id", "id"),
)

rollouts = Table(  # a module taken to the targets a filter picks, wave by wave
    "rollouts", metadata,
    Column("id", Integer, primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("module_id", Integer, ForeignKey("software_modules.id"), nullable=False),
    Column("kind", String(16), nullable=False),  # ActionKind of the actions it makes
    Column("target_filter", Text, nullable=False),  # TargetFilter JSON
    Column("success_percent", Integer, nullable=False),  # a wave this done starts the next
    Column("error_percent", Integer, nullable=False),  # a wave this failed stops the rollout
    Column("on_error", String(16), nullable=False),  # pause | abort
    Column("approval_required", Boolean, nullable=False),
    Column("maintenance", Text),  # MaintenanceWindow JSON for its actions
    Column("state", String(24), nullable=False),  # RolloutState
    Column("current_wave", Integer, nullable=False),  # 0 before the first wave starts
    Column("reason", Text, nullable=False, default=""),  # why it paused or stopped
    Column("created_by", String(128), nullable=False),
    Column("approved_by", String(128)),
    Column("created_ns", BigInteger, nullable=False),
    Column("updated_ns", BigInteger, nullable=False),
    Index("ix_rollouts_tenant", "tenant", "id"),
)

rollout_waves = Table(
    "rollout_waves", metadata,
    Column("rollout_id", Integer, ForeignKey("rollouts.id"), primary_key=True),
    Column("number", Integer, primary_key=True),  # 1, 2, …
    Column("size", Integer, nullable=False),  # targets in it
    Column("started_ns", BigInteger),  # set once: a wave starts exactly once
    Column("finished_ns", BigInteger),
)

rollout_targets = Table(  # which targets a rollout takes, in which wave (fixed at creation)
    "rollout_targets", metadata,
    Column("rollout_id", Integer, ForeignKey("rollouts.id"), primary_key=True),
    Column("target_id", Integer, ForeignKey("targets.id"), primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("action_id", Integer, ForeignKey("actions.id")),  # set when its wave starts
    Column("skipped", Text),  # why it got no action (its update mode, say)
    Index("ix_rollout_targets_wave", "rollout_id", "wave"),
)

ddi_changes = Table(  # what changed for which controllers: other workers drop cached answers
    "ddi_changes", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("tenant", String(64), nullable=False),
    Column("controller_id", String(128)),  # none: every controller of the tenant
    Column("at_ns", BigInteger, nullable=False),
    Index("ix_ddi_changes_at", "at_ns"),
)
