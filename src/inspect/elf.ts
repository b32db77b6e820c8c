/** e_machine values to the architecture names virt-inspector uses. */
const MACHINES: Record<number, [string, string]> = {
  // machine: [32-bit name, 64-bit name]
  2: ['sparc', 'sparc64'],
  3: ['i386', 'i386'],
  8: ['mips', 'mips64'],
  20: ['ppc', 'ppc64'],
  21: ['ppc64', 'ppc64'],
  22: ['s390', 's390x'],
  40: ['arm', 'arm'],
  43: ['sparc64', 'sparc64'],
  50: ['ia64', 'ia64'],
  62: ['x86_64', 'x86_64'],
  183: ['aarch64', 'aarch64'],
  243: ['riscv32', 'riscv64'],
  258: ['loongarch64', 'loongarch64'],
};

/**
 * The architecture of an ELF file from its first 20 bytes (e_ident and e_machine), or
 * undefined when `head` is not ELF. Little-endian ppc64 and mips get their "le"/"el" names.
 */
export function elfArch(head: Uint8Array): string | undefined {
  if (head.length < 20 || head[0] !== 0x7f || head[1] !== 0x45 || head[2] !== 0x4c || head[3] !== 0x46)
    return undefined;
  const is64 = head[4] === 2;
  const little = head[5] === 1;
  if (head[4] !== 1 && head[4] !== 2) return undefined;
  if (head[5] !== 1 && head[5] !== 2) return undefined;
  const machine = little ? head[18] | (head[19] << 8) : (head[18] << 8) | head[19];
  const names = MACHINES[machine];
  if (!names) return `elf-machine-${machine}`;
  const name = is64 ? names[1] : names[0];
  if (name === 'ppc64' && little) return 'ppc64le';
  if ((name === 'mips' || name === 'mips64') && little) return `${name}el`;
  return name;
}
