// Every word the page shows, in English and French: the messages by key, the reasons the page's own steps give (a
// photo refused, an upload set aside) turned into the person's language at display time, numbers and percentages by
// Intl. The language: the one chosen in Settings (remembered), else the first of the browser's languages the page
// speaks, else English. A test checks that every message has every language and that a page in one language shows
// none of the other's (tests/test_web_engines.py).

export const LANGUAGES = ['en', 'fr'];
const LOCALES = {en: 'en-GB', fr: 'fr-FR'};

export const MESSAGES = {
  en: {
    title: 'Fruits!',
    online: 'online', offline: 'offline', network: 'network',
    lead: 'Photograph a fruit: the page tells you what it is. Nothing leaves your phone but a short list of numbers ' +
          '(the photo\'s vector), and only to help the model.',
    take: 'Take a photo', choose: 'Choose photos', folder: 'A folder',
    knowField: 'I know what it is (optional)', knowPlaceholder: 'e.g. Banana',
    starting: 'Starting…',
    ready: 'Ready: model started in {s} s on {n} {workers}.', worker_one: 'worker', worker_other: 'workers',
    cannotStart: 'Cannot start: {reason}',
    error: 'Error: {reason}',
    vectorizing: 'Vectorizing {done} / {total} photos…', perSecond: '{n} per second',
    noPhotos: 'No photos in that pick.',
    vectorized_one: '{n} photo vectorized in {s} s.', vectorized_other: '{n} photos vectorized in {s} s.',
    unread_one: '{n} could not be read', unread_other: '{n} could not be read',
    photos: 'Photos',
    summaryVectorized_one: '{n} vectorized', summaryVectorized_other: '{n} vectorized',
    summaryRejected_one: '{n} rejected', summaryRejected_other: '{n} rejected',
    summaryDuplicates_one: '{n} duplicate', summaryDuplicates_other: '{n} duplicates',
    summarySkipped_one: '{n} skipped (not a photo)', summarySkipped_other: '{n} skipped (not photos)',
    summaryApproximate_one: '{n} decoded differently from the cloud (close: sent all the same; see the list)',
    summaryApproximate_other: '{n} decoded differently from the cloud (close: sent all the same; see the list)',
    labelRefused: 'label "{label}" refused ({problem}): sent without a label',
    andMore: '… and {n} more',
    decodedDifferently: 'decoded differently from the cloud',
    rejectsSummary_one: '{n} photo could not be read', rejectsSummary_other: '{n} photos could not be read',
    otherSkipped_one: ', {n} other file skipped', otherSkipped_other: ', {n} other files skipped',
    saveVectors: 'Save vectors (.parquet)',
    contribution: 'Contribution',
    contributionOff: 'Contribution is off: this page has no bucket and identity pool configured.',
    sent_one: '{n} file of vectors sent this visit', sent_other: '{n} files of vectors sent this visit',
    waiting_one: '{n} waiting', waiting_other: '{n} waiting', nothingWaiting: 'nothing waiting',
    setAside_one: '{n} set aside, not sent ({reason})', setAside_other: '{n} set aside, not sent ({reason})',
    contributesTo: 'Contributes to {where} ({on})', localStack: 'the local stack on this machine, {host}',
    awsRegion: 'AWS, {region}', itsRegion: 'its region',
    thisDevice: 'This device: {id}',
    modelLine: 'Model {name} ({mb} MB, fingerprint {sha}…), run in this page by LiteRT.js',
    identifies: 'Identifies {n} fruits (projection {id}, {k} components)',
    identificationUnavailable: 'Identification unavailable: {reason}',
    decodesAsCloud: 'This browser decodes photos as the cloud does.',
    decodesDifferently: 'In this browser {what}: such photos are marked.',
    engineFull: 'large JPEGs are decoded fully, then averaged (no exact scaled decode)',
    engineClose: 'large JPEGs use a scaled decode close to, not equal to, the cloud\'s',
    engineAlpha: 'transparency is composited 1 level off', engineDeep: '16-bit photos are reduced to 8 bits differently',
    engineFormat: '{format} decodes differently',
    engineCompat: ' LiteRT.js runs its compat Wasm here (no relaxed SIMD): vectors equal the cloud\'s to float rounding.',
    settings: 'Settings',
    settingsIdentity: 'This device\'s folder is named by its identity. A new identity starts a new folder; the old one ' +
                      'keeps what was sent.',
    language: 'Language', automatic: 'Automatic (this browser\'s)',
    resetIdentity: 'Start a new device identity', retryAside: 'Try the set-aside files again',
    confirmReset: 'Start a new device identity? New vectors will go to a new folder.',
    // the answer
    vectorizedOnly: 'Vectorized', noProjection: 'no projection published yet to identify it',
    unknown: 'Not a fruit I know',
    unknownDetail: 'Nothing it was sent looks close enough to say.',
    notSure: 'Not sure: {a} or {b}?',
    notSureSpecies: '{species}: {a} or {b}?',
    isIt: 'Is it…?', mayBe: 'The closest fruits it knows:',
    noneOfThese: 'None of these',
    confidence: '{p} of the answers given this sure were right',
    chosen: 'Thank you: recorded as “{name}”, sent with its vector.',
    noneChosen: 'Noted: sent without a name.',
    addPhoto: 'Add another photo of this fruit', combined: 'From {n} photos of this fruit.',
    // the card
    season: 'Season', storage: 'Keeping', per100: 'Per 100 g', sources: 'Sources', from: 'from',
    noNutrition: 'No open food-composition table we use gives this fruit\'s nutrition.',
    energy_kj: 'Energy', energy_kcal: 'Energy', water_g: 'Water', sugars_g: 'Sugars', fibre_g: 'Fibre',
    vitamin_c_mg: 'Vitamin C', potassium_mg: 'Potassium',
    colon: ': ',
    // what the page itself notices
    noOfflineCache: 'no offline cache here (service workers need https or localhost)',
    noOfflineCacheWhy: 'no offline cache ({reason})',
    probesMissing: 'decode probes missing: every photo is marked as decoded differently from the cloud',
    noIdentity: 'no device identity yet ({reason}): vectors are made and identified, not sent',
    noVectorsYet: 'no vectors yet: pick photos first',
  },
  fr: {
    title: 'Fruits!',
    online: 'en ligne', offline: 'hors ligne', network: 'réseau',
    lead: 'Photographiez un fruit : la page vous dit ce que c\'est. Rien ne quitte votre téléphone qu\'une courte ' +
          'liste de nombres (le vecteur de la photo), et seulement pour aider le modèle.',
    take: 'Prendre une photo', choose: 'Choisir des photos', folder: 'Un dossier',
    knowField: 'Je sais ce que c\'est (facultatif)', knowPlaceholder: 'par ex. Banane',
    starting: 'Démarrage…',
    ready: 'Prêt : modèle démarré en {s} s sur {n} {workers}.', worker_one: 'processus', worker_other: 'processus',
    cannotStart: 'Démarrage impossible : {reason}',
    error: 'Erreur : {reason}',
    vectorizing: 'Vectorisation de {done} / {total} photos…', perSecond: '{n} par seconde',
    noPhotos: 'Aucune photo dans cette sélection.',
    vectorized_one: '{n} photo vectorisée en {s} s.', vectorized_other: '{n} photos vectorisées en {s} s.',
    unread_one: '{n} illisible', unread_other: '{n} illisibles',
    photos: 'Photos',
    summaryVectorized_one: '{n} vectorisée', summaryVectorized_other: '{n} vectorisées',
    summaryRejected_one: '{n} refusée', summaryRejected_other: '{n} refusées',
    summaryDuplicates_one: '{n} en double', summaryDuplicates_other: '{n} en double',
    summarySkipped_one: '{n} ignoré (pas une photo)', summarySkipped_other: '{n} ignorés (pas des photos)',
    summaryApproximate_one: '{n} décodée autrement que dans le cloud (de près : envoyée tout de même ; voir la liste)',
    summaryApproximate_other: '{n} décodées autrement que dans le cloud (de près : envoyées tout de même ; voir la liste)',
    labelRefused: 'nom « {label} » refusé ({problem}) : envoyée sans nom',
    andMore: '… et {n} de plus',
    decodedDifferently: 'décodée autrement que dans le cloud',
    rejectsSummary_one: '{n} photo illisible', rejectsSummary_other: '{n} photos illisibles',
    otherSkipped_one: ', {n} autre fichier ignoré', otherSkipped_other: ', {n} autres fichiers ignorés',
    saveVectors: 'Enregistrer les vecteurs (.parquet)',
    contribution: 'Contribution',
    contributionOff: 'La contribution est désactivée : cette page n\'a ni compartiment ni groupe d\'identités configuré.',
    sent_one: '{n} fichier de vecteurs envoyé pendant cette visite',
    sent_other: '{n} fichiers de vecteurs envoyés pendant cette visite',
    waiting_one: '{n} en attente', waiting_other: '{n} en attente', nothingWaiting: 'rien en attente',
    setAside_one: '{n} mis de côté, non envoyé ({reason})', setAside_other: '{n} mis de côté, non envoyés ({reason})',
    contributesTo: 'Contribue à {where} ({on})', localStack: 'la pile locale de cette machine, {host}',
    awsRegion: 'AWS, {region}', itsRegion: 'sa région',
    thisDevice: 'Cet appareil : {id}',
    modelLine: 'Modèle {name} ({mb} Mo, empreinte {sha}…), exécuté dans cette page par LiteRT.js',
    identifies: 'Reconnaît {n} fruits (projection {id}, {k} composantes)',
    identificationUnavailable: 'Reconnaissance indisponible : {reason}',
    decodesAsCloud: 'Ce navigateur décode les photos comme le cloud.',
    decodesDifferently: 'Dans ce navigateur, {what} : ces photos sont signalées.',
    engineFull: 'les grands JPEG sont décodés en entier puis moyennés (pas de décodage réduit exact)',
    engineClose: 'les grands JPEG passent par un décodage réduit proche de celui du cloud, sans lui être égal',
    engineAlpha: 'la transparence est composée à un niveau près', engineDeep: 'les photos 16 bits sont réduites à 8 bits autrement',
    engineFormat: '{format} est décodé autrement',
    engineCompat: ' LiteRT.js utilise ici son Wasm de compatibilité (sans SIMD relâché) : les vecteurs égalent ceux du ' +
                  'cloud à l\'arrondi près.',
    settings: 'Réglages',
    settingsIdentity: 'Le dossier de cet appareil porte le nom de son identité. Une nouvelle identité ouvre un nouveau ' +
                      'dossier ; l\'ancien garde ce qui a été envoyé.',
    language: 'Langue', automatic: 'Automatique (celle du navigateur)',
    resetIdentity: 'Nouvelle identité pour cet appareil', retryAside: 'Renvoyer les fichiers mis de côté',
    confirmReset: 'Donner une nouvelle identité à cet appareil ? Les nouveaux vecteurs iront dans un nouveau dossier.',
    vectorizedOnly: 'Vectorisée', noProjection: 'aucune projection publiée pour la reconnaître',
    unknown: 'Je ne connais pas ce fruit',
    unknownDetail: 'Rien de ce qu\'on lui a envoyé n\'en est assez proche pour le dire.',
    notSure: 'Pas sûr : {a} ou {b} ?',
    notSureSpecies: '{species} : {a} ou {b} ?',
    isIt: 'Est-ce… ?', mayBe: 'Les fruits connus les plus proches :',
    noneOfThese: 'Aucun de ceux-là',
    confidence: '{p} des réponses données avec cette assurance étaient justes',
    chosen: 'Merci : noté « {name} », envoyé avec son vecteur.',
    noneChosen: 'Noté : envoyée sans nom.',
    addPhoto: 'Ajouter une autre photo de ce fruit', combined: 'D\'après {n} photos de ce fruit.',
    season: 'Saison', storage: 'Conservation', per100: 'Pour 100 g', sources: 'Sources', from: 'd\'après',
    noNutrition: 'Aucune table de composition ouverte que nous utilisons ne donne les valeurs nutritionnelles de ce fruit.',
    energy_kj: 'Énergie', energy_kcal: 'Énergie', water_g: 'Eau', sugars_g: 'Sucres', fibre_g: 'Fibres',
    vitamin_c_mg: 'Vitamine C', potassium_mg: 'Potassium',
    colon: '\u00a0: ',
    noOfflineCache: 'pas de cache hors ligne ici (les service workers demandent https ou localhost)',
    noOfflineCacheWhy: 'pas de cache hors ligne ({reason})',
    probesMissing: 'sondes de décodage absentes : chaque photo est signalée comme décodée autrement que dans le cloud',
    noIdentity: 'pas encore d\'identité d\'appareil ({reason}) : les vecteurs sont calculés et reconnus, pas envoyés',
    noVectorsYet: 'pas encore de vecteurs : choisissez d\'abord des photos',
  },
};

// The reasons the page's own steps give (mirrors of Python's, which tests compare word for word in English): in
// French at display time. Each: a pattern of the English reason and its French, $1... its parts.
const REASONS = [
  [/^empty file \(0 bytes\)$/, 'fichier vide (0 octet)'],
  [/^empty$/, 'vide'],
  [/^not an image this page can identify$/, 'pas une image que cette page sait lire'],
  [/^not text$/, 'pas du texte'],
  [/^a HEIC photo, which this browser cannot decode .*$/,
   'une photo HEIC, que ce navigateur ne sait pas décoder (sur iPhone, choisissez-la dans Photos : Safari donne un JPEG à la page)'],
  [/^a TIFF image, which browsers cannot decode: export it as JPEG or PNG$/,
   'une image TIFF, que les navigateurs ne savent pas décoder : exportez-la en JPEG ou PNG'],
  [/^an SVG is a vector drawing, not a photo: export it as JPEG or PNG$/,
   'un SVG est un dessin vectoriel, pas une photo : exportez-le en JPEG ou PNG'],
  [/^a PDF is a document, not a photo$/, 'un PDF est un document, pas une photo'],
  [/^skipped: not a photo \(extension (.*)\)$/, 'ignoré : pas une photo (extension $1)'],
  [/^(\S+) bytes, over the limit of (\S+) bytes for a photo: not read$/,
   '$1 octets, au-delà de la limite de $2 octets par photo : non lue'],
  [/^(\d+)x(\d+) = (\d+) pixels is over the limit of (\d+) \(decompression bomb\?\); not decoded$/,
   '$1x$2 = $3 pixels dépasse la limite de $4 (bombe de décompression ?) ; non décodée'],
  [/^(\d+)x(\d+) pixels is over the limit of (\d+)$/, '$1x$2 pixels dépasse la limite de $3'],
  [/^an animation \((\w+), (\d+) frames\), not a photo$/, 'une animation ($1, $2 images), pas une photo'],
  [/^cannot decode: (.*)$/, 'décodage impossible : $1'],
  [/^cannot vectorize: (.*)$/, 'vectorisation impossible : $1'],
  [/^the browser decoded it as (\w+), not RGB$/, 'le navigateur l\'a décodée en $1, pas en RVB'],
  [/^this browser's handling of a (\w+)'s EXIF orientation is not known .*$/,
   'on ne sait pas comment ce navigateur applique l\'orientation EXIF d\'un $1 : la photo ne peut pas être tournée ' +
   'comme le cloud la tourne, elle n\'est donc pas vectorisée'],
  [/^(\w+) decoded by this browser differently from Pillow$/, '$1 décodé par ce navigateur autrement que par Pillow'],
  [/^transparency composited differently by this browser \(premultiplied alpha\)$/,
   'transparence composée autrement par ce navigateur (alpha prémultiplié)'],
  [/^longer than (\d+) characters \((\d+)\)$/, 'plus de $1 caractères ($2)'],
  [/^'(.*)' is a reserved word \(it cannot be told from an answer\)$/,
   '« $1 » est un mot réservé (on ne le distinguerait pas d\'une réponse)'],
  [/^holds the invisible character (U\+[0-9A-F]+)$/, 'contient le caractère invisible $1'],
  [/^holds the character (U\+[0-9A-F]+) \(only letters, digits, spaces and (.*) are allowed\)$/,
   'contient le caractère $1 (seuls les lettres, les chiffres, les espaces et $2 sont permis)'],
  [/^mixes (.*) letters \(a look-alike of another label\)$/, 'mêle des lettres de plusieurs écritures ($1 : un sosie d\'un autre nom)'],
  [/^offline: the files wait in the queue and go when the network is back$/,
   'hors ligne : les fichiers attendent dans la file et partiront au retour du réseau'],
  [/^cannot reach S3 \((.*)\); the files wait in the queue and go when the network is back$/,
   'S3 injoignable ($1) ; les fichiers attendent dans la file et partiront au retour du réseau'],
  [/^bucket (\S+) does not exist$/, 'le compartiment $1 n\'existe pas'],
  [/^the device's credentials expired \((.*)\) and could not be renewed$/,
   'les identifiants de l\'appareil ont expiré ($1) et n\'ont pas pu être renouvelés'],
  [/^S3 rejected the credentials \((.*)\)$/, 'S3 a refusé les identifiants ($1)'],
  [/^access denied to bucket (\S+) \((.*)\): check the device role's policy$/,
   'accès refusé au compartiment $1 ($2) : vérifiez la politique du rôle des appareils'],
  [/^S3 answered (.*)$/, 'S3 a répondu $1'],
];

let current = 'en';

/** The page's language from the person's choice (Settings) and the browser's languages: the first one it speaks. */
export function pickLanguage(chosen, browserLanguages) {
  for (const l of [chosen, ...(browserLanguages || [])]) {
    const two = String(l || '').slice(0, 2).toLowerCase();
    if (LANGUAGES.includes(two)) return two;
  }
  return 'en';
}

export function setLanguage(lang) { current = LANGUAGES.includes(lang) ? lang : 'en'; }
export function language() { return current; }
export function locale() { return LOCALES[current]; }

/** The message `key` in the page's language, its {names} filled from `params`; `n` picks _one / _other forms. */
export function t(key, params = {}) {
  let k = key;
  if ('n' in params && MESSAGES.en[`${key}_one`] !== undefined) {
    k = `${key}_${new Intl.PluralRules(locale()).select(params.n) === 'one' ? 'one' : 'other'}`;
  }
  const text = MESSAGES[current][k] ?? MESSAGES.en[k];
  if (text === undefined) throw new Error(`no message ${key}`);
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

/** A reason one of the page's steps gave (in English, as Python's), in the page's language. */
export function reason(text) {
  if (current === 'en' || typeof text !== 'string') return text;
  const whole = translated(text);
  if (whole !== null) return whole;
  const parts = text.split('; ');          // several notes joined: each in turn
  return parts.length > 1 ? parts.map((p) => translated(p) ?? p).join(' ; ') : text;
}

function translated(text) {
  for (const [pattern, fr] of REASONS) if (pattern.test(text)) return text.replace(pattern, fr);
  return null;
}

/** A number as the page's language writes it. */
export function number(v, digits = 1) {
  return new Intl.NumberFormat(locale(), {maximumFractionDigits: digits}).format(v);
}

/** A share as a percentage, as the page's language writes it ("94 %" in French). */
export function percent(v) {
  return new Intl.NumberFormat(locale(), {style: 'percent', maximumFractionDigits: 0}).format(v);
}

/** The static page's words: every element with data-i18n (its text), data-i18n-placeholder, data-i18n-title. */
export function localize(root = document) {
  document.documentElement.lang = current;
  for (const node of root.querySelectorAll('[data-i18n]')) node.textContent = t(node.dataset.i18n);
  for (const node of root.querySelectorAll('[data-i18n-placeholder]')) node.placeholder = t(node.dataset.i18nPlaceholder);
  for (const node of root.querySelectorAll('[data-i18n-title]')) node.title = t(node.dataset.i18nTitle);
}
