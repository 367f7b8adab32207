// The flags Chromium runs with in the e2e test (tests/e2e/demo.mjs) and in the call-rates
// measurement (benches/call-rates.mjs): fake media, no background throttling, loopback ICE.

export const CHROMIUM_ARGS = [
  '--use-fake-device-for-media-stream', // synthetic camera (moving pattern) + mic (beeps)
  '--use-fake-ui-for-media-stream', // auto-accept camera/mic and screen-capture prompts
  '--auto-select-desktop-capture-source=Entire screen', // getDisplayMedia picks the screen
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // WebRTC ignores loopback interfaces by default; in a network namespace with
  // only `lo` (run-in-netns.sh) there would be no ICE candidates at all.
  '--allow-loopback-in-peer-connection',
  // Hidden/occluded pages must keep decoding video and running timers.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];
