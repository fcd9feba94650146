// The device's own short-lived AWS credentials from an Amazon Cognito identity pool (unauthenticated
// identities), as edge_client/identity.py gets them: GetId once (the identity id is the device's client_id,
// its client=<id>/ folder, kept in IndexedDB across visits), then GetCredentialsForIdentity (an hour),
// refreshed before they expire. Both calls are unsigned: no AWS key is ever on the phone.
//
// The id is kept by the page itself, not by the SDK's fromCognitoIdentityPool, which deletes its cached id
// after a credential error and so would give the device a new folder without a word. Here a refused identity
// is an error the person sees; a new identity is made only when they ask for it (resetIdentity).

import {CognitoIdentityClient, GetCredentialsForIdentityCommand, GetIdCommand} from '@aws-sdk/client-cognito-identity';
import * as storage from './storage.js';

const REFRESH_BEFORE_MS = 5 * 60 * 1000;

export class IdentityRefused extends Error {}

export class DeviceIdentity {
  constructor({poolId, region, endpoint}) {
    this.poolId = poolId;
    this.client = new CognitoIdentityClient({region, endpoint: endpoint || undefined, maxAttempts: 3});
    this.cached = null;
    this.storeKey = `identity:${poolId}`;
  }

  /** The kept identity id, or a new one from GetId on this device's first visit. */
  async identityId() {
    const kept = await storage.get('kv', this.storeKey);
    if (kept) return kept;
    const out = await this.client.send(new GetIdCommand({IdentityPoolId: this.poolId}));
    await storage.put('kv', out.IdentityId, this.storeKey);
    return out.IdentityId;
  }

  /** A fresh identity id, only on the person's request (Settings: "new device identity"). */
  async resetIdentity() {
    await storage.remove('kv', this.storeKey);
    this.cached = null;
    return this.identityId();
  }

  /** Credentials for the SDK (an AwsCredentialIdentityProvider): refreshed 5 minutes before they expire. */
  provider() {
    return async () => {
      if (this.cached && this.cached.expiration.getTime() - Date.now() > REFRESH_BEFORE_MS) return this.cached;
      const identityId = await this.identityId();
      let out;
      try {
        out = await this.client.send(new GetCredentialsForIdentityCommand({IdentityId: identityId}));
      } catch (err) {
        if (['NotAuthorizedException', 'ResourceNotFoundException', 'InvalidParameterException'].includes(err.name)) {
          throw new IdentityRefused(`the identity pool refused this device's identity ${identityId} (${err.name}: ` +
                                    `${err.message}); it was kept: start a new device identity in Settings to go on`);
        }
        throw err;
      }
      const c = out.Credentials;
      this.cached = {accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretKey, sessionToken: c.SessionToken,
                     expiration: new Date(c.Expiration)};
      return this.cached;
    };
  }

  /** Forget the credentials (an ExpiredToken answer): the next request fetches new ones. */
  expire() { this.cached = null; }
}
