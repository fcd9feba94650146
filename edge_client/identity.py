"""Per-device, short-lived credentials from an Amazon Cognito identity pool, the way mobile apps on AWS get them.

The device asks the pool for an identity id once (``GetId``; kept in ``~/.fruits/identity-<pool>.json`` so
the device keeps it, and so its ``client=<id>/`` folder) and for temporary credentials of that identity
(``GetCredentialsForIdentity``: an hour), renewed before they expire however long a run takes. Both calls are unsigned: the device holds no AWS
key at all. The pool's role for these identities may only add new objects under
``.../client=${cognito-identity.amazonaws.com:sub}/`` (``bootstrap/policies.py``), so one device can neither
write under another's prefix nor overwrite anything.

A laptop can keep using static keys from the standard credential chain instead; Cognito is the safer
choice for phones: nothing long-lived is stored on the device, a lost phone's identity expires within the
hour and can be disabled in the pool, and each device is confined to its own prefix.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from edge_client.manifest import default_manifest_path
from edge_client.vectorize import UserError

_POOL_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d:[0-9a-f-]{36}$")


@dataclass
class DeviceIdentity:
    pool_id: str
    identity_id: str
    session: object          # boto3.Session with the temporary credentials
    expires: str = ""


def identity_file(pool_id: str) -> Path:
    return default_manifest_path().parent / f"identity-{pool_id.replace(':', '_')}.json"


def device_identity(pool_id: str, *, region: str | None = None, endpoint_url: str | None = None,
                    state: Path | None = None) -> DeviceIdentity:
    """The device's identity in ``pool_id`` (created once, then reused) and fresh temporary credentials."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    if not _POOL_RE.match(pool_id or ""):
        raise UserError(f"--identity-pool {pool_id!r} is not a Cognito identity pool id (REGION:UUID, like "
                        f"eu-west-3:0b5c...)")
    region = region or pool_id.split(":", 1)[0]
    client = boto3.client("cognito-identity", region_name=region, endpoint_url=endpoint_url,
                          config=Config(signature_version=UNSIGNED, retries={"max_attempts": 5, "mode": "adaptive"}))
    state = state or identity_file(pool_id)
    try:
        identity_id = json.loads(state.read_text())["identity_id"] if state.is_file() else None
    except (ValueError, KeyError, OSError):
        identity_id = None
    def refused(exc: ClientError) -> UserError:
        code = exc.response.get("Error", {}).get("Code", "")
        return UserError(f"the identity pool {pool_id} refused this device ({code}: "
                         f"{exc.response.get('Error', {}).get('Message', '')}); check the pool id and region, and "
                         f"that it allows unauthenticated identities")

    try:
        if identity_id is None:
            identity_id = client.get_id(IdentityPoolId=pool_id)["IdentityId"]
            state.parent.mkdir(parents=True, exist_ok=True)
            tmp = state.with_suffix(".part")
            tmp.write_text(json.dumps({"pool_id": pool_id, "identity_id": identity_id}))
            os.replace(tmp, state)
    except ClientError as exc:
        raise refused(exc) from None
    except BotoCoreError as exc:
        raise UserError(f"cannot reach Cognito in {region} ({type(exc).__name__}); try again") from None

    def fetch() -> dict:
        """New credentials for this identity (an hour); botocore calls it again before they expire."""
        try:
            creds = client.get_credentials_for_identity(IdentityId=identity_id)["Credentials"]
        except ClientError as exc:
            raise refused(exc) from None
        except BotoCoreError as exc:
            raise UserError(f"cannot reach Cognito in {region} to renew the device's credentials "
                            f"({type(exc).__name__}); run the same command again") from None
        expiry = creds["Expiration"]
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretKey"], "token": creds["SessionToken"],
                "expiry_time": expiry.isoformat() if hasattr(expiry, "isoformat") else str(expiry)}

    first = fetch()
    return DeviceIdentity(pool_id, identity_id, refreshing_session(fetch, first, region), first["expiry_time"])


def refreshing_session(fetch, first: dict, region: str):
    """A boto3 Session whose credentials renew themselves: botocore refreshes them when fewer than 15 minutes
    are left (10 minutes: before any request), by calling ``fetch`` again, during vectorize and upload alike."""
    import boto3
    from botocore.credentials import RefreshableCredentials
    from botocore.session import get_session

    core = get_session()
    core._credentials = RefreshableCredentials.create_from_metadata(metadata=first, refresh_using=fetch,
                                                                     method="cognito-identity")
    return boto3.Session(botocore_session=core, region_name=region)
