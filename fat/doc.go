// Package fat reads and writes a FAT32 volume on a partition — the ESP, or
// GRUB's boot partition — without mounting it, through go-diskfs: writes are
// ordered and synced so that a power cut leaves a volume that the next Open
// puts right (FAT copies made one, clusters no file uses freed, directory
// entries and FSInfo counts corrected), and the firmware and the
// bootloaders, which never repair, read the files of before the cut or of
// after it.
package fat
