// Min log: the citizen's access log. A client of Portvagt's FHIR API like any other: it reads
// AuditEvent with the citizen's own token and shows what comes back, and (where the gateway
// lets citizens block) makes, lists and lifts her own blocks as Consents through the same API.
// No framework, no third-party code; the DOM is built with textContent only.
'use strict';

(() => {
  const TEXT = {
    da: {
      skip: 'Spring til indholdet',
      title: 'Min log',
      lead: 'Her kan du se, hvem der har set eller ændret dine sundhedsdata, hvornår og hvorfor.',
      otherLanguage: 'English',
      signinTitle: 'Log ind',
      signinText: 'Log ind for at se din log. Siden viser kun det, du selv har adgang til.',
      login: 'Log ind',
      loginUnavailable: 'Login er ikke sat op her. Brug et adgangstoken nedenfor.',
      tokenSummary: 'Har du allerede et adgangstoken? (test og demo)',
      tokenLabel: 'Adgangstoken',
      tokenSubmit: 'Vis min log',
      logTitle: 'Adgange til dine data',
      logout: 'Log ud',
      filterLegend: 'Afgræns',
      from: 'Fra dato',
      to: 'Til dato',
      organisation: 'Organisation',
      allOrganisations: 'Alle organisationer',
      apply: 'Vis',
      more: 'Vis flere',
      loading: 'Henter din log …',
      shown: (n) => (n === 1 ? 'Viser 1 adgang.' : `Viser ${n} adgange.`),
      none: 'Der er ingen adgange i den valgte periode.',
      expired: 'Dit login er udløbet. Log ind igen.',
      failed: 'Loggen kunne ikke hentes lige nu. Prøv igen senere.',
      helpTitle: 'Hvad kan du gøre?',
      helpBlock: 'Du kan spærre for, at en bestemt sundhedsperson eller organisation ser dine oplysninger (negativt samtykke). Spærringen gælder med det samme for alle opslag gennem denne tjeneste, også søgninger.',
      helpBreakGlass: 'I en nødsituation kan en sundhedsperson se dine oplysninger trods en spærring (værdispring). Det sker kun med en begrundelse, og det står altid her med begrundelsen.',
      helpDenied: 'Afviste forsøg står også i loggen: de viser, at nogen forsøgte, men ikke fik adgang.',
      who: 'Hvem',
      organisationLabel: 'Organisation',
      system: 'System',
      onBehalfOf: 'På vegne af',
      what: 'Hvad',
      purpose: 'Formål',
      reason: 'Begrundelse',
      unknownPerson: 'Ukendt person',
      you: 'Dig selv',
      breakGlass: 'Værdispring',
      breakGlassText: 'Adgang trods din spærring, i en nødsituation',
      breakGlassUnrelatedText: 'Adgang uden behandlingsrelation, i en nødsituation. Den bliver fulgt op',
      basis: 'Grundlag',
      bases: { relationship: 'Behandlingsrelation', vaerdispring: 'Værdispring: ingen behandlingsrelation' },
      denied: 'Afvist',
      deniedText: 'Forsøget blev afvist: der blev ikke vist data',
      actions: { C: 'Oprettede', R: 'Så', U: 'Ændrede', D: 'Slettede', E: 'Udførte en handling på' },
      search: 'Søgte i',
      data: {
        Patient: 'dine personoplysninger', Observation: 'dine målinger og prøvesvar',
        Condition: 'dine diagnoser', Encounter: 'dine kontakter og indlæggelser',
        MedicationRequest: 'dine ordinationer', AllergyIntolerance: 'dine allergier',
        Procedure: 'dine behandlinger', DiagnosticReport: 'dine svar og rapporter',
        Immunization: 'dine vaccinationer', AuditEvent: 'din log', Consent: 'dine samtykker',
      },
      yourData: 'dine data',
      purposes: {
        TREAT: 'Behandling', ETREAT: 'Akut behandling', BTG: 'Værdispring (nødsituation)',
        PATRQT: 'Din egen forespørgsel', HOPERAT: 'Drift', HPAYMT: 'Afregning',
      },
      roles: {
        7170: 'Læge', 5166: 'Sygeplejerske', 5433: 'Tandlæge', 5175: 'Jordemoder',
        5152: 'Social- og sundhedsassistent',
      },
      blockPerson: 'Spær for denne sundhedsperson',
      blockOrganisation: 'Spær for denne organisation',
      blockedMark: 'Spærret',
      blocksTitle: 'Dine spærringer',
      blocksNone: 'Du har ingen spærringer.',
      lift: 'Ophæv spærring',
      liftNamed: (name) => `Ophæv spærring for ${name}`,
      since: (date) => `Spærret siden ${date}`,
      until: (date) => `til ${date}`,
      confirmTitle: (name) => `Spær for ${name}?`,
      confirmWhat: (seconds) => `Spærringen gælder ${seconds ? `senest efter ${seconds} sekunder` : 'med det samme'}: de kan ikke se dine sundhedsdata gennem denne tjeneste, heller ikke i søgninger. Du kan ophæve den igen her.`,
      confirmEmergency: 'Den gælder ikke i en nødsituation: en sundhedsperson kan stadig se dine data med en begrundelse (værdispring), og det står altid i din log. Den gælder heller ikke andre systemer end dette.',
      confirmYes: 'Spær',
      confirmNo: 'Fortryd',
      madeBlock: (name) => `Du har spærret for ${name}.`,
      liftedBlock: (name) => `Du har ophævet spærringen for ${name}.`,
      blockFailed: 'Spærringen kunne ikke gemmes lige nu. Prøv igen senere.',
      liftFailed: 'Spærringen kunne ikke ophæves lige nu. Prøv igen senere.',
      youBlocked: (name) => `Du spærrede for ${name}`,
      youLifted: (name) => `Du ophævede spærringen for ${name}`,
      someone: 'en sundhedsperson',
    },
    en: {
      skip: 'Skip to content',
      title: 'My access log',
      lead: 'See who has viewed or changed your health data, when and why.',
      otherLanguage: 'Dansk',
      signinTitle: 'Sign in',
      signinText: 'Sign in to see your log. The page shows only what you yourself have access to.',
      login: 'Sign in',
      loginUnavailable: 'Sign-in is not set up here. Use an access token below.',
      tokenSummary: 'Already have an access token? (testing and demo)',
      tokenLabel: 'Access token',
      tokenSubmit: 'Show my log',
      logTitle: 'Accesses to your data',
      logout: 'Sign out',
      filterLegend: 'Narrow down',
      from: 'From date',
      to: 'To date',
      organisation: 'Organisation',
      allOrganisations: 'All organisations',
      apply: 'Show',
      more: 'Show more',
      loading: 'Fetching your log …',
      shown: (n) => (n === 1 ? 'Showing 1 access.' : `Showing ${n} accesses.`),
      none: 'There are no accesses in the chosen period.',
      expired: 'Your sign-in has expired. Please sign in again.',
      failed: 'Your log could not be fetched right now. Please try again later.',
      helpTitle: 'What can you do?',
      helpBlock: 'You can block a named health professional or organisation from seeing your data (negative consent). A block applies at once to every look-up through this service, searches included.',
      helpBreakGlass: 'In an emergency a health professional may see your data despite a block (break the glass). That takes a stated reason, and it is always shown here with the reason.',
      helpDenied: 'Refused attempts are in the log too: someone tried, and was not given access.',
      who: 'Who',
      organisationLabel: 'Organisation',
      system: 'System',
      onBehalfOf: 'On behalf of',
      what: 'What',
      purpose: 'Purpose',
      reason: 'Reason given',
      unknownPerson: 'Unknown person',
      you: 'You',
      breakGlass: 'Break the glass',
      breakGlassText: 'Access despite your block, in an emergency',
      breakGlassUnrelatedText: 'Access without a treatment relationship, in an emergency. It is followed up',
      basis: 'Basis',
      bases: { relationship: 'Treatment relationship', vaerdispring: 'Break the glass: no treatment relationship' },
      denied: 'Refused',
      deniedText: 'The attempt was refused: no data was shown',
      actions: { C: 'Created', R: 'Viewed', U: 'Changed', D: 'Deleted', E: 'Performed an operation on' },
      search: 'Searched',
      data: {
        Patient: 'your personal details', Observation: 'your measurements and test results',
        Condition: 'your diagnoses', Encounter: 'your visits and admissions',
        MedicationRequest: 'your prescriptions', AllergyIntolerance: 'your allergies',
        Procedure: 'your treatments', DiagnosticReport: 'your reports',
        Immunization: 'your vaccinations', AuditEvent: 'your log', Consent: 'your consents',
      },
      yourData: 'your data',
      purposes: {
        TREAT: 'Treatment', ETREAT: 'Emergency treatment', BTG: 'Break the glass (emergency)',
        PATRQT: 'Your own request', HOPERAT: 'Operations', HPAYMT: 'Payment',
      },
      roles: {
        7170: 'Physician', 5166: 'Nurse', 5433: 'Dentist', 5175: 'Midwife',
        5152: 'Social and health care assistant',
      },
      blockPerson: 'Block this health professional',
      blockOrganisation: 'Block this organisation',
      blockedMark: 'Blocked',
      blocksTitle: 'Your blocks',
      blocksNone: 'You have no blocks.',
      lift: 'Lift block',
      liftNamed: (name) => `Lift the block on ${name}`,
      since: (date) => `Blocked since ${date}`,
      until: (date) => `until ${date}`,
      confirmTitle: (name) => `Block ${name}?`,
      confirmWhat: (seconds) => `The block applies ${seconds ? `within ${seconds} seconds` : 'at once'}: they cannot see your health data through this service, searches included. You can lift it again here.`,
      confirmEmergency: 'It does not hold in an emergency: a health professional can still see your data with a stated reason (break the glass), and that is always shown in your log. Nor does it hold for systems other than this one.',
      confirmYes: 'Block',
      confirmNo: 'Cancel',
      madeBlock: (name) => `You have blocked ${name}.`,
      liftedBlock: (name) => `You have lifted the block on ${name}.`,
      blockFailed: 'The block could not be saved right now. Please try again later.',
      liftFailed: 'The block could not be lifted right now. Please try again later.',
      youBlocked: (name) => `You blocked ${name}`,
      youLifted: (name) => `You lifted the block on ${name}`,
      someone: 'a health professional',
    },
  };

  const TOKEN_KEY = 'minlog.token';
  const PKCE_KEY = 'minlog.pkce';
  const LANGUAGE_KEY = 'minlog.language';
  const PAGE_SIZE = 20;

  const $ = (id) => document.getElementById(id);
  let language = localStorage.getItem(LANGUAGE_KEY) === 'en' ? 'en' : 'da';
  let settings = { fhirBase: '/fhir', clientId: 'minlog', scope: 'openid fhirUser launch/patient patient/AuditEvent.rs', blocks: false, blocksWithin: 0 };
  let smart = null;
  let events = [];
  let next = null;
  let blocks = [];
  let pending = null; // the block the dialog asks about
  const AUTHORISATION = 'https://autregweb.sst.dk';
  const SOR = 'urn:oid:1.2.208.176.1.1';
  const BLOCK_TAG = 'urn:portvagt:consent';
  const BLOCKED_FROM = 'urn:portvagt:consent:blocked-from';

  const t = (key) => TEXT[language][key];

  function applyLanguage() {
    document.documentElement.lang = language;
    document.title = language === 'da'
      ? 'Min log – hvem har set mine sundhedsdata?'
      : 'My access log – who has looked at my health data?';
    for (const element of document.querySelectorAll('[data-i18n]')) {
      const text = t(element.dataset.i18n);
      if (typeof text === 'string') element.textContent = text;
    }
    const toggle = $('language');
    toggle.textContent = t('otherLanguage');
    toggle.lang = language === 'da' ? 'en' : 'da';
    if (pending) $('confirm-title').textContent = t('confirmTitle')(pending.option.name);
    $('confirm-what').textContent = t('confirmWhat')(Number(settings.blocksWithin) || 0);
    renderBlocks();
    render();
  }

  // ---- Signing in: authorization code with PKCE (RFC 7636), or a token given by hand. ----

  const base64url = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const random = (n) => base64url(crypto.getRandomValues(new Uint8Array(n)));
  const redirectUri = () => `${location.origin}/minlog/`;

  async function login() {
    if (!smart || !smart.authorization_endpoint || !smart.token_endpoint) {
      say(t('loginUnavailable'));
      $('token-entry').open = true;
      $('token').focus();
      return;
    }
    const verifier = random(32);
    const challenge = base64url(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier)));
    const state = random(16);
    sessionStorage.setItem(PKCE_KEY, JSON.stringify({ verifier, state }));
    const url = new URL(smart.authorization_endpoint);
    url.search = new URLSearchParams({
      response_type: 'code',
      client_id: settings.clientId,
      redirect_uri: redirectUri(),
      scope: settings.scope,
      state,
      code_challenge: challenge,
      code_challenge_method: 'S256',
      aud: `${location.origin}${settings.fhirBase}`,
    }).toString();
    location.assign(url.toString());
  }

  // Back from the authorization server with ?code=...&state=...
  async function finishLogin(params) {
    const saved = JSON.parse(sessionStorage.getItem(PKCE_KEY) || 'null');
    sessionStorage.removeItem(PKCE_KEY);
    history.replaceState(null, '', redirectUri());
    if (!saved || saved.state !== params.get('state') || !smart || !smart.token_endpoint) return false;
    const answer = await fetch(smart.token_endpoint, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'authorization_code',
        code: params.get('code'),
        redirect_uri: redirectUri(),
        client_id: settings.clientId,
        code_verifier: saved.verifier,
      }),
    });
    if (!answer.ok) return false;
    const token = await answer.json();
    if (typeof token.access_token !== 'string') return false;
    sessionStorage.setItem(TOKEN_KEY, token.access_token);
    return true;
  }

  // ---- Reading the log through the FHIR API. ----

  function query() {
    const params = new URLSearchParams({ _count: String(PAGE_SIZE), _sort: '-date' });
    if ($('from').value) params.append('date', `ge${$('from').value}`);
    if ($('to').value) params.append('date', `le${$('to').value}`);
    return `${settings.fhirBase}/AuditEvent?${params}`;
  }

  // A next link names the gateway's public address; the page reads it on its own origin. The
  // gateway hands out its own signed paging links (`<base>/_page/<token>`).
  function sameOrigin(link) {
    try {
      const url = new URL(link, location.href);
      const path = url.pathname + url.search;
      const own = path.startsWith(`${settings.fhirBase}/AuditEvent`) || path.startsWith(`${settings.fhirBase}/_page/`);
      return own ? path : null;
    } catch {
      return null;
    }
  }

  async function load(path, append) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return showSignin();
    say(t('loading'));
    let answer;
    try {
      answer = await api(path);
    } catch {
      return say(t('failed'));
    }
    if (answer.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignin();
      return say(t('expired'));
    }
    if (!answer.ok) return say(t('failed'));
    const bundle = await answer.json();
    const found = (bundle.entry || [])
      .map((entry) => entry.resource)
      .filter((resource) => resource && resource.resourceType === 'AuditEvent');
    // New accesses arrive while she reads (her own among them): a later page can repeat the end
    // of the one before; each access is shown once.
    const seen = new Set(append ? events.map((event) => event.id) : []);
    events = (append ? events : []).concat(found.filter((event) => !event.id || !seen.has(event.id)));
    const link = (bundle.link || []).find((l) => l.relation === 'next');
    next = link ? sameOrigin(link.url) : null;
    fillOrganisations();
    render();
  }

  // ---- What an AuditEvent says, for a person. ----

  // The token's claims (its payload read, not verified: only to say "you", and to offer only
  // what the token may do; the gateway decides).
  function claims() {
    try {
      const payload = (sessionStorage.getItem(TOKEN_KEY) || '').split('.')[1];
      const json = atob(payload.replace(/-/g, '+').replace(/_/g, '/'));
      return JSON.parse(decodeURIComponent(escape(json))) || {};
    } catch {
      return {};
    }
  }

  function ownPatient() {
    const { patient } = claims();
    return typeof patient === 'string' ? `Patient/${patient}` : null;
  }

  // Blocks are offered where the gateway takes them and her token may make them.
  function canBlock() {
    const scope = typeof claims().scope === 'string' ? claims().scope : '';
    return settings.blocks === true
      && /(^|\s)patient\/(Consent|\*)\.(\*|write|c[ruds]*)(\s|$)/.test(scope);
  }

  const code = (concept) => concept && ((concept.coding && concept.coding[0] && concept.coding[0].code) || concept.code);
  const agentsOf = (event, kind) => (event.agent || []).filter((agent) => code(agent.type) === kind);

  function describe(event) {
    const user = agentsOf(event, 'humanuser')[0];
    const organisation = agentsOf(event, 'PROV')[0];
    const onBehalf = agentsOf(event, 'RESP')[0];
    const system = agentsOf(event, '110153')[0];
    const purposes = (event.purposeOfEvent || []).concat(user && user.purposeOfUse ? user.purposeOfUse : [])
      .map(code).filter(Boolean);
    const breakGlass = purposes.includes('BTG');
    const reasons = (event.entity || [])
      .flatMap((entity) => entity.detail || [])
      .filter((detail) => detail.type === 'break-glass-reason')
      .map((detail) => detail.valueString);
    // Where a treatment relationship is required: what the access rested on.
    const bases = (event.entity || [])
      .flatMap((entity) => entity.detail || [])
      .filter((detail) => detail.type === 'access-basis')
      .map((detail) => String(detail.valueString || '').split(' ')[0]);
    const subtype = code((event.subtype || [])[0]);
    const searched = subtype === 'search-type' || subtype === 'search-system';
    // In a search the Patient entity is whose data was searched, not what was found.
    const dataTypes = [...new Set((event.entity || [])
      .map((entity) => entity.what && entity.what.reference)
      .filter(Boolean)
      .map((reference) => reference.split('/')[0])
      .filter((type) => !searched || type !== 'Patient'))];
    const role = user && user.role && user.role[0];
    const roleCode = code(role);
    const yourself = user && user.who && user.who.reference && user.who.reference === ownPatient();
    // One of her own block changes: what changed, and whom it blocks.
    const details = (event.entity || []).flatMap((entity) => entity.detail || []);
    const changed = details.find((detail) => detail.type === 'citizen-block');
    const blockedName = details.find((detail) => detail.type === 'blocked');
    return {
      id: event.id,
      change: changed ? changed.valueString : null,
      changeName: blockedName ? blockedName.valueString : t('someone'),
      blockable: (yourself || changed || !isId(event.id)) ? [] : blockable(user, organisation),
      recorded: event.recorded,
      // A system's own access (no person named) is shown by the system's name.
      who: yourself ? t('you') : ((user && (user.name || (user.who && user.who.display))) || null),
      profession: roleCode ? (t('roles')[roleCode] || (role.coding && role.coding[0].display) || roleCode) : null,
      organisation: organisation ? whoName(organisation) : null,
      onBehalfOf: onBehalf ? whoName(onBehalf) : null,
      system: system ? whoName(system) : null,
      action: searched ? t('search') : (t('actions')[event.action] || t('actions').R),
      data: dataTypes.length ? dataTypes.map((type) => t('data')[type] || type).join(', ') : t('yourData'),
      purposes: [...new Set(purposes.filter((p) => p !== 'BTG'))].map((p) => t('purposes')[p] || p),
      breakGlass,
      reason: reasons[0] || null,
      basis: bases.length ? (t('bases')[bases[0]] || null) : null,
      unrelated: bases.includes('vaerdispring'),
      denied: event.outcome !== undefined && event.outcome !== '0',
    };
  }

  // Whom an access lets her block: the person (by the Practitioner or PractitionerRole the log
  // names, else by authorisation id) and the health care unit (by SOR code).
  function blockable(user, organisation) {
    const options = [];
    if (user) {
      const reference = user.who && user.who.reference;
      const authorisation = (user.extension || [])
        .map((other) => other.valueIdentifier)
        .find((identifier) => identifier && identifier.system === AUTHORISATION && identifier.value);
      const actor = reference && /^(Practitioner|PractitionerRole)\/[A-Za-z0-9.-]{1,64}$/.test(reference)
        ? { reference }
        : authorisation ? { identifier: { system: AUTHORISATION, value: authorisation.value } } : null;
      if (actor) options.push({ kind: 'person', actor, name: user.name || (user.who && user.who.display) || t('someone') });
    }
    const unit = organisation && organisation.who && organisation.who.identifier;
    if (unit && unit.system === SOR && unit.value) {
      options.push({ kind: 'organisation', actor: { identifier: { system: SOR, value: unit.value } }, name: whoName(organisation) });
    }
    return options;
  }

  const sameActor = (a, b) => (a.reference && a.reference === b.reference)
    || (a.identifier && b.identifier && a.identifier.system === b.identifier.system
      && String(a.identifier.value).toLowerCase() === String(b.identifier.value).toLowerCase());

  function whoName(agent) {
    const who = agent.who || {};
    if (who.display) return who.display;
    if (who.identifier && who.identifier.value) {
      const system = who.identifier.system || '';
      const prefix = system.includes('cvr') ? 'CVR ' : system.endsWith('1.2.208.176.1.1') ? 'SOR ' : '';
      return prefix + who.identifier.value;
    }
    return null;
  }

  // ---- Drawing. ----

  function fillOrganisations() {
    const select = $('organisation');
    const chosen = select.value;
    const names = [...new Set(events.map((event) => describe(event).organisation).filter(Boolean))].sort();
    while (select.options.length > 1) select.remove(1);
    for (const name of names) select.add(new Option(name, name));
    select.value = names.includes(chosen) ? chosen : '';
  }

  // A date as a person reads it; one that cannot be read, as it was written.
  function when(format, value) {
    try {
      return format.format(new Date(value));
    } catch {
      return String(value);
    }
  }

  // A FHIR id, before it goes into a URL (no `.` or `..` segments).
  const isId = (id) => typeof id === 'string' && /^[A-Za-z0-9.-]{1,64}$/.test(id) && !/^\.+$/.test(id);

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function fact(list, label, value) {
    if (!value) return;
    list.append(element('dt', null, label), element('dd', null, value));
  }

  function render() {
    const list = $('entries');
    if (!list) return;
    list.replaceChildren();
    const organisation = $('organisation').value;
    const shown = events.map(describe).filter((entry) => !organisation || entry.organisation === organisation);
    const format = new Intl.DateTimeFormat(language === 'da' ? 'da-DK' : 'en-GB', { dateStyle: 'long', timeStyle: 'short' });
    for (const entry of shown) {
      const item = element('li', 'entry');
      const article = element('article');
      if (entry.breakGlass) article.classList.add('break-glass');
      if (entry.denied) article.classList.add('denied');
      const time = element('time', 'when', entry.recorded ? when(format, entry.recorded) : '');
      if (entry.recorded) time.dateTime = entry.recorded;
      const heading = element('h3', 'headline');
      heading.append(time);
      article.append(heading);
      if (entry.change && !entry.denied) {
        // One of her own block changes: said as what she did.
        const said = entry.change === 'lifted' ? t('youLifted')(entry.changeName) : t('youBlocked')(entry.changeName);
        article.classList.add('block-change');
        article.append(element('p', 'change', said));
        item.append(article);
        list.append(item);
        continue;
      }
      if (entry.breakGlass) {
        const badge = element('p', 'badge badge-break-glass');
        const text = entry.unrelated ? t('breakGlassUnrelatedText') : t('breakGlassText');
        badge.append(element('strong', null, t('breakGlass')), document.createTextNode(` – ${text}`));
        article.append(badge);
      }
      if (entry.denied) {
        const badge = element('p', 'badge badge-denied');
        badge.append(element('strong', null, t('denied')), document.createTextNode(` – ${t('deniedText')}`));
        article.append(badge);
      }
      const facts = element('dl', 'facts');
      const person = [entry.who, entry.profession].filter(Boolean).join(', ');
      fact(facts, t('who'), person || entry.system || t('unknownPerson'));
      fact(facts, t('onBehalfOf'), entry.onBehalfOf);
      fact(facts, t('organisationLabel'), entry.organisation);
      if (person) fact(facts, t('system'), entry.system);
      fact(facts, t('what'), `${entry.action} ${entry.data}`);
      fact(facts, t('purpose'), entry.purposes.join(', '));
      fact(facts, t('basis'), entry.basis);
      fact(facts, t('reason'), entry.reason);
      article.append(facts);
      if (canBlock() && entry.blockable.length) article.append(blockActions(entry));
      item.append(article);
      list.append(item);
    }
    $('more').hidden = !next;
    if (!$('log').hidden) say(shown.length ? t('shown')(shown.length) : t('none'));
  }

  function blockActions(entry) {
    const actions = element('div', 'entry-actions');
    for (const option of entry.blockable) {
      if (blocks.some((block) => sameActor(block.actor, option.actor))) {
        actions.append(element('p', 'blocked', `${t('blockedMark')}: ${option.name}`));
        continue;
      }
      const button = element('button', 'secondary small', option.kind === 'person' ? t('blockPerson') : t('blockOrganisation'));
      button.type = 'button';
      button.addEventListener('click', () => askBlock(entry, option, button));
      actions.append(button);
    }
    return actions;
  }

  // ---- Her blocks: Consents she makes and lifts through the same API. ----

  async function loadBlocks() {
    const section = $('blocks');
    if (!canBlock()) {
      section.hidden = true;
      blocks = [];
      return;
    }
    section.hidden = false;
    try {
      const answer = await api(`${settings.fhirBase}/Consent?status=active&_count=50`);
      if (!answer.ok) throw new Error(String(answer.status));
      const bundle = await answer.json();
      blocks = (bundle.entry || [])
        .map((entry) => entry.resource)
        .filter((consent) => consent && consent.resourceType === 'Consent' && consent.status === 'active'
          && isId(consent.id)
          && ((consent.meta && consent.meta.tag) || []).some((tag) => tag.system === BLOCK_TAG && tag.code === 'citizen-block'))
        .map((consent) => {
          const reference = ((consent.provision || {}).actor || [])[0] || {};
          const actor = reference.reference || {};
          return {
            id: consent.id,
            actor,
            name: actor.display || (actor.identifier && actor.identifier.value) || actor.reference || t('someone'),
            since: consent.dateTime,
            until: consent.provision && consent.provision.period && consent.provision.period.end,
          };
        });
    } catch {
      blocks = [];
    }
    renderBlocks();
  }

  function renderBlocks() {
    const list = $('block-list');
    list.replaceChildren();
    $('blocks-none').hidden = blocks.length > 0;
    const format = new Intl.DateTimeFormat(language === 'da' ? 'da-DK' : 'en-GB', { dateStyle: 'long' });
    for (const block of blocks) {
      const item = element('li');
      const who = element('div');
      who.append(element('strong', null, block.name));
      const since = [block.since ? t('since')(when(format, block.since)) : null,
        block.until ? t('until')(block.until) : null].filter(Boolean).join(' ');
      if (since) who.append(element('span', 'since', since));
      const lift = element('button', 'secondary small', t('lift'));
      lift.type = 'button';
      lift.setAttribute('aria-label', t('liftNamed')(block.name));
      lift.addEventListener('click', () => liftBlock(block));
      item.append(who, lift);
      list.append(item);
    }
  }

  function askBlock(entry, option, trigger) {
    pending = { entry, option, trigger };
    $('confirm-title').textContent = t('confirmTitle')(option.name);
    $('confirm-what').textContent = t('confirmWhat')(Number(settings.blocksWithin) || 0);
    $('confirm').showModal();
    $('confirm-no').focus();
  }

  async function confirmBlock() {
    const asked = pending;
    pending = null;
    $('confirm').close();
    if (!asked) return;
    const body = {
      resourceType: 'Consent',
      status: 'active',
      patient: { reference: ownPatient() },
      provision: { type: 'deny', actor: [{ reference: asked.option.actor }] },
      extension: [{ url: BLOCKED_FROM, valueReference: { reference: `AuditEvent/${asked.entry.id}` } }],
    };
    const answer = await api(`${settings.fhirBase}/Consent`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/fhir+json' },
      body: JSON.stringify(body),
    }).catch(() => null);
    await loadBlocks();
    render();
    $('block-status').textContent = answer && answer.ok ? t('madeBlock')(asked.option.name) : t('blockFailed');
    $('blocks-title').focus();
  }

  async function liftBlock(block) {
    const answer = await api(`${settings.fhirBase}/Consent/${block.id}`, {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/json-patch+json' },
      body: JSON.stringify([{ op: 'replace', path: '/status', value: 'inactive' }]),
    }).catch(() => null);
    await loadBlocks();
    render();
    $('block-status').textContent = answer && answer.ok ? t('liftedBlock')(block.name) : t('liftFailed');
    $('blocks-title').focus();
  }

  // A request through the FHIR API with her token.
  function api(path, options = {}) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), Authorization: `Bearer ${token}`, Accept: 'application/fhir+json' },
      cache: 'no-store',
    });
  }

  function say(text) {
    $('status').textContent = text;
  }

  function showSignin() {
    $('log').hidden = true;
    $('signin').hidden = false;
  }

  async function showLog() {
    $('signin').hidden = true;
    $('log').hidden = false;
    await loadBlocks();
    return load(query(), false);
  }

  // ---- Wiring. ----

  async function start() {
    $('language').addEventListener('click', () => {
      language = language === 'da' ? 'en' : 'da';
      localStorage.setItem(LANGUAGE_KEY, language);
      applyLanguage();
    });
    $('login').addEventListener('click', () => { login(); });
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const token = $('token').value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      $('token').value = '';
      showLog();
    });
    $('logout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      events = [];
      next = null;
      blocks = [];
      $('blocks').hidden = true;
      $('block-status').textContent = '';
      render();
      showSignin();
      $('login').focus();
    });
    $('filters').addEventListener('submit', (event) => {
      event.preventDefault();
      load(query(), false);
    });
    $('organisation').addEventListener('change', render);
    $('more').addEventListener('click', () => { if (next) load(next, true); });
    $('confirm-yes').addEventListener('click', () => { confirmBlock(); });
    // Esc closes the dialog too: nothing is blocked, and focus goes back where it was.
    $('confirm').addEventListener('cancel', () => {
      const asked = pending;
      pending = null;
      if (asked && asked.trigger.isConnected) asked.trigger.focus();
    });
    $('confirm-no').addEventListener('click', () => {
      const asked = pending;
      pending = null;
      $('confirm').close();
      if (asked && asked.trigger.isConnected) asked.trigger.focus();
    });
    applyLanguage();

    try {
      settings = Object.assign(settings, await (await fetch('settings.json')).json());
    } catch { /* the defaults */ }
    try {
      const answer = await fetch(`${settings.fhirBase}/.well-known/smart-configuration`);
      if (answer.ok) smart = await answer.json();
    } catch { /* no sign-in; a token can still be given */ }

    const params = new URLSearchParams(location.search);
    if (params.has('code') && params.has('state')) {
      if (!(await finishLogin(params))) say(t('expired'));
    }
    if (sessionStorage.getItem(TOKEN_KEY)) showLog();
    else showSignin();
  }

  document.addEventListener('DOMContentLoaded', start);
})();
